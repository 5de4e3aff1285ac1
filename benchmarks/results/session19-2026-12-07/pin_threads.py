import json, os, sys, tempfile, threading, time, urllib.request
from pathlib import Path
from benchmarks import common, targets
from benchmarks.loadgen import run_closed_loop
model = common.load_model_spec(sys.argv[1]); conc=int(sys.argv[2])
workdir = Path(tempfile.mkdtemp(prefix="pin-"))
target = targets.shipyard_target([model], workdir)
def count():
    with urllib.request.urlopen(f"http://127.0.0.1:{target.ports['rest']}/v2/models/{model.name}/stats") as r:
        st=json.loads(r.read())["model_stats"][0]
    return st["inference_count"], st["execution_count"]
def threads(pid):
    out={}
    for t in os.listdir(f"/proc/{pid}/task"):
        out.setdefault(open(f"/proc/{pid}/task/{t}/comm").read().strip(),[]).append(int(t))
    return out
F={0,1}
plans = [
    ("free", {"python":F,"nexting_thread":F,"grpc-writer":F}),
    ("loop0 writer0", {"python":{0},"nexting_thread":F,"grpc-writer":{0}}),
    ("free", {"python":F,"nexting_thread":F,"grpc-writer":F}),
    ("loop1 writer1", {"python":{1},"nexting_thread":F,"grpc-writer":{1}}),
]
with common.running(target.server):
    target.server.wait_ready(target.probe, target.startup_timeout_s)
    spec = target.specs["grpc"](model)
    per = 6.0
    t=threading.Thread(target=lambda: run_closed_loop(spec, conc, 1.0, per*len(plans)*2+4, client="native"))
    t.start(); time.sleep(3)
    pid=target.server.pid
    for rep in range(2):
      for name, plan in plans:
        if plan:
            th=threads(pid)
            for comm, cpus in plan.items():
                for tid in th.get(comm, []):
                    os.sched_setaffinity(tid, cpus)
        time.sleep(1)
        c0,e0=count(); t0=time.monotonic(); time.sleep(per-1); c1,e1=count(); dt=time.monotonic()-t0
        print(f"{name:28s} {(c1-c0)/dt:8.0f} req/s  {(c1-c0)/max(1,e1-e0):5.1f} items/exec", flush=True)
    t.join()

"""Open Inference Protocol v2 frontends: codecs (REST JSON/binary, gRPC), validation, apps.

The codecs turn wire messages into ``DecodedRequest`` (numpy arrays, no per-element Python for
binary data) and outputs back into wire messages; ``validate`` checks a decoded request against a
``ServedModel`` and builds the scheduler's ``InferenceRequest``. Nothing here runs at import.
"""

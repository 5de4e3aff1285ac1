"""Side-by-side serving benchmark (``make bench``): shipyard against its references. See README.md."""

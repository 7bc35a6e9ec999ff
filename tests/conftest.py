import os

# TVM runs on one thread unless told; set before tvm starts its thread pool.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

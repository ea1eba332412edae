"""ONNX Runtime on tessera IR models: the peer measurement behind `cargo xtask bench models --ort PYTHON`.

usage: PYTHON tools/ort_models.py --ir DIR --out FILE [--threads 1,2] [--min-time 0.3] [--serve]

DIR is one tessera IR model (graph.json + weights.safetensors, written by `bench models` after
the IR passes) or holds one per subdirectory. Each is converted to an ONNX graph (opset 13) op for op,
checked against the reference output `reference.bin` beside it (our plan's output on
`input.bin`; f32 little-endian), and timed in ONNX Runtime at batch 1 with intra-op threads
from --threads (inter-op 1, sequential execution, all graph optimizations on). Writes FILE
(JSON): per model and thread count the median ms, the max abs difference to our output, and
the versions. With --serve (one model), it prints `ready VERSION` after the check instead and
answers stdin lines `time THREADS SECONDS` with the median ms of such a window, so that
`bench models` can time ORT and its own plan in interleaved rounds. Needs numpy, onnx and onnxruntime (`pip install numpy onnx onnxruntime`; the
peers venv `../shared/tools/peers` has them).
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        dtype = {"F32": np.float32, "U8": np.uint8}[meta["dtype"]]
        out[name] = np.frombuffer(data[a:b], dtype=dtype).reshape(meta["shape"])
    return out


ACT = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh"}


class Builder:
    def __init__(self, weights):
        self.w = weights
        self.nodes = []
        self.inits = {}
        self.count = 0

    def init(self, name, array=None):
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(
                np.ascontiguousarray(self.w[name] if array is None else array, dtype=np.float32), name
            )
        return name

    def fresh(self, base):
        self.count += 1
        return f"{base}__{self.count}"

    def act(self, kind, x, y):
        if kind is None:
            self.nodes.append(helper.make_node("Identity", [x], [y]))
        elif kind in ACT:
            self.nodes.append(helper.make_node(ACT[kind], [x], [y]))
        elif kind == "relu6":
            lo = self.init("__zero", np.array(0.0, np.float32))
            hi = self.init("__six", np.array(6.0, np.float32))
            self.nodes.append(helper.make_node("Clip", [x, lo, hi], [y]))
        elif kind == "hard_swish":
            t = self.fresh(y)
            self.nodes.append(helper.make_node("HardSigmoid", [x], [t], alpha=1.0 / 6.0, beta=0.5))
            self.nodes.append(helper.make_node("Mul", [x, t], [y]))
        else:
            raise ValueError(f"activation {kind} has no ONNX mapping here")

    def node(self, n):
        op, ins, y = n["op"], n["inputs"], n["output"]
        if op == "conv":
            spatial = len(n["stride"])
            args = [ins[0], self.init(n["weight"])] + ([self.init(n["bias"])] if n.get("bias") else [])
            shape = self.w[n["weight"]].shape
            t = self.fresh(y) if n.get("activation") else y
            self.nodes.append(
                helper.make_node(
                    "Conv",
                    args,
                    [t],
                    kernel_shape=list(shape[2:]),
                    strides=n["stride"],
                    pads=n["padding"] * 2,
                    dilations=n["dilation"],
                    group=n["groups"],
                )
            )
            assert len(shape) == 2 + spatial
            if n.get("activation"):
                self.act(n["activation"], t, y)
        elif op == "linear":
            t = self.fresh(y) if n.get("activation") else y
            args = [ins[0], self.init(n["weight"])] + ([self.init(n["bias"])] if n.get("bias") else [])
            self.nodes.append(helper.make_node("Gemm", args, [t], transB=1))
            if n.get("activation"):
                self.act(n["activation"], t, y)
        elif op == "batch_norm":
            args = [ins[0]] + [self.init(n[k]) for k in ("gamma", "beta", "mean", "var")]
            self.nodes.append(helper.make_node("BatchNormalization", args, [y], epsilon=n["eps"]))
        elif op == "act":
            self.act(n["kind"], ins[0], y)
        elif op in ("max_pool", "avg_pool"):
            kw = dict(kernel_shape=n["kernel"], strides=n["stride"], pads=n["padding"] * 2)
            if op == "avg_pool":
                kw["count_include_pad"] = 1
            self.nodes.append(helper.make_node("MaxPool" if op == "max_pool" else "AveragePool", [ins[0]], [y], **kw))
        elif op == "global_avg_pool":
            t = self.fresh(y)
            self.nodes.append(helper.make_node("GlobalAveragePool", [ins[0]], [t]))
            self.nodes.append(helper.make_node("Flatten", [t], [y], axis=1))
        elif op == "add":
            t = self.fresh(y) if n.get("activation") else y
            self.nodes.append(helper.make_node("Add", ins, [t]))
            if n.get("activation"):
                self.act(n["activation"], t, y)
        elif op == "flatten":
            self.nodes.append(helper.make_node("Flatten", ins, [y], axis=n["start"]))
        elif op == "reshape":
            name = self.fresh("shape")
            self.inits[name] = numpy_helper.from_array(np.array(n["shape"], np.int64), name)
            self.nodes.append(helper.make_node("Reshape", [ins[0], name], [y]))
        else:
            raise ValueError(f"node {n['name']}: op {op} has no ONNX mapping here")


def to_onnx(ir_dir, out_len):
    graph = json.load(open(os.path.join(ir_dir, "graph.json")))
    weights = load_safetensors(os.path.join(ir_dir, "weights.safetensors"))
    b = Builder(weights)
    for n in graph["nodes"]:
        b.node(n)
    (inp,) = graph["inputs"]
    (out,) = graph["outputs"]
    g = helper.make_graph(
        b.nodes,
        graph["name"],
        [helper.make_tensor_value_info(inp["name"], TensorProto.FLOAT, inp["shape"])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [inp["shape"][0], out_len // inp["shape"][0]])],
        list(b.inits.values()),
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="tessera")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m, inp["shape"]


def median_ms(run, min_time):
    for _ in range(5):
        run()
    times = []
    start = time.perf_counter()
    while len(times) < 20 or (time.perf_counter() - start < min_time and len(times) < 5000):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return times[len(times) // 2]


def serve(sessions):
    """Answers 'time THREADS SECONDS' lines with one median-ms line each, until 'quit' or EOF."""
    print(f"ready {ort.__version__}", flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            break
        if parts[0] != "time" or len(parts) != 3 or int(parts[1]) not in sessions:
            print(f"error: expected 'time THREADS SECONDS' for threads {sorted(sessions)}, got {line!r}", flush=True)
            continue
        sess, feed = sessions[int(parts[1])]
        print(f"{median_ms(lambda: sess.run(None, feed), float(parts[2])):.6f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument(
        "--serve",
        action="store_true",
        help="after checking, print 'ready' and answer stdin lines 'time THREADS SECONDS' with "
        "the median ms of that window (one model), so that a caller can interleave rounds",
    )
    args = ap.parse_args()
    results = {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "models": []}
    if os.path.isfile(os.path.join(args.ir, "graph.json")):
        dirs = [(os.path.basename(os.path.normpath(args.ir)), args.ir)]
    else:
        dirs = [(name, os.path.join(args.ir, name)) for name in sorted(os.listdir(args.ir))]
    for name, d in dirs:
        if not os.path.isfile(os.path.join(d, "graph.json")):
            continue
        ref = np.fromfile(os.path.join(d, "reference.bin"), dtype="<f4")
        model, shape = to_onnx(d, ref.size)
        x = np.fromfile(os.path.join(d, "input.bin"), dtype="<f4").reshape(shape)
        sessions = {}
        for threads in [int(t) for t in args.threads.split(",")]:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            feed = {sess.get_inputs()[0].name: x}
            y = sess.run(None, feed)[0].reshape(-1)
            diff = float(np.max(np.abs(y - ref))) if y.shape == ref.shape else float("inf")
            scale = float(np.max(np.abs(ref))) or 1.0
            if not diff <= 1e-3 * scale:
                print(f"{name}: ONNX Runtime output differs from tessera's by {diff} (scale {scale})", file=sys.stderr)
                sys.exit(1)
            sessions[threads] = (sess, feed)
            if args.serve:
                continue
            ms = median_ms(lambda: sess.run(None, feed), args.min_time)
            print(f"{name} threads {threads}: {ms:.3f} ms (max |diff| {diff:.2e})", file=sys.stderr)
            results["models"].append({"model": name, "threads": threads, "median_ms": ms, "max_abs_diff": diff})
        if args.serve:
            serve(sessions)
            return
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()

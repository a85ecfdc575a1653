"""A stand-in training script for the subprocess executor tests; knows nothing of recipes.

Arguments in any style: ``--x 0.3``, ``--x=0.3`` or ``x=0.3``. ``--how`` picks how it reports
(report | json | regex | tensorboard | silent), ``--fail`` crashes it, ``--hang`` sleeps for
ever; ``--mode crash|hang|silent|ok`` is one switch for those. ``--ignore_term 1`` makes it
ignore SIGTERM (a script that does not stop when asked), ``--exit_on_term 1`` print a value and
exit 0 on it (as Lightning's trainer ends a run cut short); ``--nan_at E`` reports NaN at epoch
E. It writes what it saw (argv values, pid, CUDA_VISIBLE_DEVICES, trial env, working folder,
sys.prefix) to seen.json in its working directory.
"""

import json
import os
import sys
import time


def parse(argv):
    out, i = {}, 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--") and "=" in token:
            k, v = token[2:].split("=", 1)
        elif token.startswith("--"):
            k, v = token[2:], argv[i + 1]
            i += 1
        else:
            k, v = token.split("=", 1)
        out[k] = v
        i += 1
    return out


args = parse(sys.argv[1:])
if args.get("ignore_term"):
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if args.get("exit_on_term"):
    import signal

    def _exit_zero(signum, frame):
        print(json.dumps({"loss": 9.9}), flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, _exit_zero)
mode = args.get("mode")  # one switch for the failure tests
if mode == "crash":
    args["fail"] = "1"
elif mode == "hang":
    args["hang"] = "1"
elif mode in ("silent", "ok"):
    args["how"] = "silent" if mode == "silent" else "json"
x, y = float(args.get("x", 0.5)), float(args.get("y", 0.5))
epochs, how = int(args.get("epochs", 4)), args.get("how", "json")
# written whole, then renamed: a test that polls for seen.json never reads half a file
with open("seen.json.part", "w") as f:
    json.dump(
        {
            "args": args,
            "pid": os.getpid(),
            "time": time.time(),
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "trial": os.environ.get("TORCHTUNE_HP_TRIAL"),
            "threads": os.environ.get("OMP_NUM_THREADS"),
            "probe": os.environ.get("MY_TEST_PROBE"),
            "cwd": os.getcwd(),
            "prefix": sys.prefix,
        },
        f,
    )
os.replace("seen.json.part", "seen.json")
time.sleep(float(args.get("sleep", 0)))
if args.get("fail"):
    print("about to fail", flush=True)
    raise SystemExit("something broke in the training script")
if args.get("hang"):
    time.sleep(3600)

if how == "tensorboard":
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter("runs/exp1")
epoch = -1
for epoch in range(epochs):
    loss = (x - 0.3) ** 2 + (y - 0.7) ** 2 + 1.0 / (epoch + 1)
    if args.get("nan_at") is not None and epoch == int(args["nan_at"]):
        loss = float("nan")
    if how == "report":
        import torchtune_hp

        if torchtune_hp.report(loss=loss, step=epoch):
            break
    elif how == "regex":
        print(f"| epoch {epoch} | valid loss {loss:.6f} |", flush=True)
    elif how == "tensorboard":
        value = summary_pb2.Summary.Value(tag="valid/loss", simple_value=loss)
        writer.add_event(event_pb2.Event(step=epoch, summary=summary_pb2.Summary(value=[value])))
    time.sleep(float(args.get("epoch_sleep", 0)))
if how == "tensorboard":
    writer.close()
with open("epochs.txt", "w") as f:
    f.write(str(epoch + 1))
if how == "json":
    print(json.dumps({"loss": (x - 0.3) ** 2 + (y - 0.7) ** 2, "other": 1}))

"""Reads a run's TensorBoard event files with TensorBoard's own EventAccumulator and prints each
scalar series (first and last points) and the text tags: a check, run by hand, that what
lm-train writes in RUN/tb/ is what TensorBoard shows. CI does not need Python.

    pip install tensorboard
    python docs/scripts/read_tensorboard.py runs/gpt-shakespeare-char
"""

import sys

import tensorboard
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(run_dir: str) -> None:
    acc = EventAccumulator(f"{run_dir}/tb", size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    print(f"tensorboard {tensorboard.__version__}: {run_dir}/tb")
    for tag in sorted(tags["scalars"]):
        points = acc.Scalars(tag)
        first, last = points[0], points[-1]
        print(
            f"  {tag}: {len(points)} points, step {first.step} = {first.value:.6g}"
            f" ... step {last.step} = {last.value:.6g}"
        )
    for tag in sorted(tags["tensors"]):
        events = acc.Tensors(tag)
        text = events[-1].tensor_proto.string_val[0].decode()
        print(f"  {tag} (text, step {events[-1].step}): {text[:60]!r}")


if __name__ == "__main__":
    main(sys.argv[1])

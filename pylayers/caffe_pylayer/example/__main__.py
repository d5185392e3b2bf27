"""python -m caffe_pylayer.example DIR: write the example's files into DIR."""
import argparse
import sys

from caffe_pylayer.example import write_example


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m caffe_pylayer.example",
        description="Write a runnable Caffe example (a prefetching Python data layer, "
                    "a Python loss, a solver) into a folder.")
    parser.add_argument("folder", help="where to write squares.py, net.prototxt, solver.prototxt")
    args = parser.parse_args()
    try:
        written = write_example(args.folder)
    except (FileExistsError, OSError) as error:
        sys.exit(f"{parser.prog}: {error}")
    print("wrote " + " ".join(str(p) for p in written))
    print(f"next: cd {args.folder} && caffe train -solver solver.prototxt")
    return 0


if __name__ == "__main__":
    sys.exit(main())

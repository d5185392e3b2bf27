"""The runnable example that the README's quick start writes and trains."""

import pytest

from conftest import run_caffe_tool, training_losses


def test_the_example_trains_as_the_readme_says(tmp_path):
    from caffe_pylayer.example import write_example
    write_example(tmp_path)
    with pytest.raises(FileExistsError, match="not overwriting"):
        write_example(tmp_path)
    result = run_caffe_tool("train", "-solver", "solver.prototxt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = training_losses(result)
    assert len(losses) >= 10 and losses[-1] <= losses[0] / 10, losses

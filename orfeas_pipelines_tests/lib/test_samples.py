import numpy as np

from orfeas_pipelines.lib.images import has_meaningful_alpha, load_image
from orfeas_pipelines.lib.samples import sample_image_paths
from orfeas_pipelines_tests import shapes


def test_samples_are_small_decodable_and_varied():
    paths = sample_image_paths()
    assert [path.stem for path in paths] == sorted(shapes.SAMPLES)
    images = [load_image(path) for path in paths]
    assert all(path.stat().st_size < 30_000 for path in paths)
    assert all(max(image.shape[:2]) <= 256 for image in images)
    with_alpha = [has_meaningful_alpha(image) for image in images]
    assert any(with_alpha) and not all(with_alpha)


def test_samples_are_what_the_shapes_module_draws(tmp_path):
    for written in shapes.write_samples(tmp_path):
        bundled = next(path for path in sample_image_paths() if path.name == written.name)
        assert np.array_equal(load_image(written), load_image(bundled)), written.name

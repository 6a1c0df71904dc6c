import numpy as np
import pytest

from study.data.compose import compose
from study.data.source import SIDE, embedded


@pytest.fixture(scope="module")
def digits():
    return embedded()


@pytest.fixture(scope="module")
def made(digits):
    return compose(digits.images, digits.labels, n=500, canvas=48, k=3, rng=np.random.default_rng(1))


def test_embedded_source_is_real_mnist(digits):
    assert digits.images.shape == (5000, SIDE, SIDE) and digits.images.dtype == np.uint8
    assert np.bincount(digits.labels).tolist() == [500] * 10
    assert digits.images.max() == 255 and (digits.images == 0).mean() > 0.7  # dark background


def test_each_image_has_k_distinct_classes_and_a_matching_multi_hot_label(made, digits):
    assert made.targets.sum(axis=1).tolist() == [3] * 500
    for classes in made.classes:
        assert len(set(classes.tolist())) == 3
    present = np.zeros_like(made.targets)
    np.put_along_axis(present, made.classes.astype(np.int64), 1, axis=1)
    assert (present == made.targets).all()
    assert (digits.labels[made.sources] == made.classes).all()


def test_digits_lie_fully_inside_the_frame(made):
    assert made.positions.min() >= 0 and made.positions.max() <= 48 - SIDE


def test_pixels_come_from_the_labelled_digits_with_nearer_ones_on_top(made, digits):
    for i in range(50):
        image = made.images[i]
        covered = np.zeros_like(image, dtype=bool)
        for layer, (src, (r, c)) in enumerate(zip(made.sources[i], made.positions[i], strict=True)):
            stroke = digits.images[src] > 0
            covered[r : r + SIDE, c : c + SIDE] |= stroke
            if layer == 2:  # the frontmost digit is drawn whole, over everything else
                window = image[r : r + SIDE, c : c + SIDE]
                assert (window[stroke] == digits.images[src][stroke]).all()
        # Nothing is drawn outside the strokes of the three labelled digits.
        assert (image[~covered] == 0).all()
        assert image[covered].any()


def test_occlusion_hides_digits_behind(made, digits):
    hidden = []
    for i in range(200):
        src, (r, c) = made.sources[i, 0], made.positions[i, 0]
        stroke = digits.images[src] > 0
        visible = made.images[i, r : r + SIDE, c : c + SIDE][stroke] == digits.images[src][stroke]
        hidden.append(1 - visible.mean())
    assert 0 < np.mean(hidden) < 0.6  # the backmost digit is partly, never mostly, hidden on average


def test_outline_clears_a_ring_around_nearer_strokes(digits):
    kwargs = dict(n=200, canvas=48, k=3)
    plain = compose(digits.images, digits.labels, rng=np.random.default_rng(2), **kwargs)
    outlined = compose(digits.images, digits.labels, rng=np.random.default_rng(2), outline=True, **kwargs)
    assert (plain.classes == outlined.classes).all()
    assert outlined.images.astype(int).sum() < plain.images.astype(int).sum()


def test_same_seed_same_bytes_other_seed_other_images(digits):
    a, b, c = (compose(digits.images, digits.labels, n=100, canvas=40, k=2, rng=np.random.default_rng(s))
               for s in (5, 5, 6))
    assert a.images.tobytes() == b.images.tobytes() and (a.targets == b.targets).all()
    assert a.images.tobytes() != c.images.tobytes()


def test_digit_strings_are_sorted_classes(made):
    strings = made.digit_strings()
    assert strings[0] == "".join(str(d) for d in sorted(made.classes[0].tolist()))
    assert all(len(s) == 3 for s in strings)


def test_a_faint_pixel_of_a_nearer_digit_no_longer_hides_a_bright_one_behind(digits):
    # On a 28-pixel canvas both digits sit at (0, 0), unwarped: pixel for pixel one over the other.
    kwargs = dict(n=300, canvas=SIDE, k=2)
    every = compose(digits.images, digits.labels, rng=np.random.default_rng(7), **kwargs)
    bright = compose(digits.images, digits.labels, rng=np.random.default_rng(7), threshold=128, **kwargs)
    assert (every.sources == bright.sources).all() and not every.positions.any()
    back, front = digits.images[every.sources[:, 0]], digits.images[every.sources[:, 1]]
    faint_over_bright = (front > 0) & (front < 128) & (back >= 128)
    strong = front >= 128
    assert faint_over_bright.sum() > 1000  # the case is common, not a corner
    assert (every.images[faint_over_bright] == front[faint_over_bright]).all()  # threshold 1: hidden
    assert (bright.images[faint_over_bright] == back[faint_over_bright]).all()  # 128: shows through
    for made in (every, bright):
        assert (made.images[strong] == front[strong]).all()  # a bright pixel hides whatever is behind
    # Where neither digit is bright, the brighter of the two shows.
    faint = (front > 0) & (front < 128) & (back < 128)
    assert (bright.images[faint] == np.maximum(front, back)[faint]).all()
    assert bright.hidden[:, 0].mean() < every.hidden[:, 0].mean()


"""The models take the dataset's integer pixels and scale them to [0, 1] in their first layer."""
import numpy as np
import pytest

from hpctrain import compat
from hpctrain.models import build
from hpctrain.spec import ModelSpec

pytestmark = pytest.mark.fast


@pytest.mark.parametrize("name, shape", [("unet", (None, None, 1)), ("mnist_cnn", (28, 28, 1)),
                                         ("lenet5", (28, 28, 1))])
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_models_scale_integer_pixels_to_the_unit_range(name, shape, dtype):
    spec = ModelSpec(name=name, **({"unet": {"depth": 3, "filters": 4}} if name == "unet" else {}))
    model = build(spec, shape, 2 if name == "unet" else 10, dtype)
    assert model.inputs[0].dtype.name == dtype
    scaled = compat.keras().Model(model.inputs, model.get_layer("unit_range").output)
    top = np.iinfo(dtype).max
    pixels = np.array([0, top // 2, top], dtype)
    side = 32 if name == "unet" else 28
    batch = np.broadcast_to(pixels[:, None, None, None], (3, side, side, 1))
    got = scaled.predict_on_batch(batch)[:, 0, 0, 0]
    np.testing.assert_allclose(got, pixels / top, rtol=1e-6)
    assert model.predict_on_batch(batch).shape[0] == 3


def test_unet_upsampling_is_nearest_and_compiles_with_xla():
    from hpctrain.models.unet import upsample2x_layer

    keras = compat.keras()
    x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(upsample2x_layer()()(x).numpy(), keras.layers.UpSampling2D(2)(x).numpy())
    model = build(ModelSpec(name="unet", unet={"depth": 3, "filters": 4}), (None, None, 1), 2)
    model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", jit_compile=True)  # gradient under XLA
    pixels = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 1), dtype=np.uint8)
    history = model.fit(pixels, (pixels > 127).astype(np.uint8), batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])

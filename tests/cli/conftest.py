"""What the command-line tests share: a workspace of every kind of file the project writes."""
import pytest
from helpers import FAST, make_images


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A code set, a logistic-regression head run and a Keras (softmax) head run on it, a sweep
    run, and a small model file (its metadata is what is mutated)."""
    import keras  # (here, not at the top: collecting the suite imports neither TensorFlow nor scikit-learn)

    from pipeline.codes import generate_codes
    from pipeline.deploy import save_model
    from pipeline.runs import sweep, train

    t = tmp_path_factory.mktemp("made")
    data = make_images(t / "data", n_classes=3, per_class=8)
    code_file = generate_codes(data, layers=["top_activation"], poolings=["avg"], cache_dir=t / "cache", **FAST)[0]
    runs = t / "runs"
    logreg = train(code_file, head="logreg", runs_dir=runs).path
    softmax = train(code_file, head="softmax", runs_dir=runs, epochs=3).path
    sweep_run = sweep([code_file], heads=["prototype"], ns=[1, 2], repeats=1, n_jobs=1, runs_dir=runs,
                      progress=False).path
    inputs = keras.Input((32, 32, 3))
    small = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs)))
    model = save_model(small, t / "small.keras", ["class0", "class1", "class2"],
                       {"kind": "scratch", "source": "test", "image_size": 32, "backbone": None, "resize": "squash"})
    return dict(t=t, data=data, code_file=code_file, runs=runs, logreg=logreg, softmax=softmax, sweep=sweep_run,
                model=model)



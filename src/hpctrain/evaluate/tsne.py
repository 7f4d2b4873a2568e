"""A 2-D t-SNE map of feature vectors (e.g. a CNN's penultimate layer), coloured by label."""
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from hpctrain.atomic import atomic_output
from hpctrain.errors import UserError


def plot_tsne(features, labels, out_png, title="t-SNE", random_state=0):
    """Embeds features (N,D) with scikit-learn's t-SNE (PCA init, fixed seed), writes a scatter plot with
    one colour per label and a legend to `out_png`, and returns the embedding (N,2)."""
    features = np.asarray(features, dtype=np.float32)
    features = features.reshape(len(features), -1)
    labels = np.asarray(labels)
    if len(features) < 5 or labels.shape != (len(features),):
        raise UserError(f"need 5 or more feature vectors, a label each; got {features.shape} and {labels.shape}")
    if not np.all(np.isfinite(features)):
        raise UserError("features contain NaN or infinite values")
    perplexity = min(30.0, (len(features) - 1) / 3)  # must stay below the number of points
    xy = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=random_state).fit_transform(features)

    fig = Figure(figsize=(7, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    classes = np.unique(labels)
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    for i, c in enumerate(classes):
        mask = labels == c
        ax.scatter(xy[mask, 0], xy[mask, 1], s=5, color=cmap(i % cmap.N), label=str(c))
    ax.legend(title="label", markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    with atomic_output(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return xy

"""The generation metrics of `st_ar_hf.evaluation` as an `evaluate` metric module, loaded from this file:

    import evaluate
    from st_ar_hf.evaluation import EVALUATE_MODULE
    metric = evaluate.load(EVALUATE_MODULE)
    metric.compute(predictions=sample_images, references=reference_images)   # uint8 [H, W, 3] arrays or PIL images

`evaluate` copies this file and imports it on its own, so it imports st_ar_hf absolutely.
"""

import datasets
import evaluate
import numpy as np

from st_ar_hf.evaluation import evaluate_generation
from st_ar_hf.sample_accuracy import SampleClassifier, sample_accuracy

_DESCRIPTION = """FID, sFID, Inception Score, precision and recall (k = 3) by the ADM evaluator's protocol, on ADM's
Inception-v3 when its weights are found ($ST_AR_INCEPTION_WEIGHTS or torch's hub cache), else on the offline
EfficientNet-Lite0 (not comparable with published FIDs); the result names the network."""
_KWARGS_DESCRIPTION = """
Args:
    predictions: generated images, uint8 [H, W, 3] (arrays or PIL images).
    references: reference images of the same size.
    labels: optional class of each prediction, with
    classifier: a `SampleClassifier` folder (`st-ar evaluate --save-classifier`): adds the sample accuracy.
Returns:
    fid, sfid, inception_score, precision, recall (None with the reason under "unreliable" when there are fewer
    images than feature dimensions), num_samples, num_reference, feature_network; with a classifier also
    sample_accuracy, per_class, classifier_held_out_accuracy.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EvaluateADM(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
        )

    def _compute(self, predictions, references, labels=None, classifier=None):
        samples = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in predictions])
        reference = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in references])
        results = evaluate_generation(samples, reference)
        if (labels is None) != (classifier is None):
            raise ValueError("sample accuracy needs both `labels` (one per prediction) and `classifier` (a folder)")
        if classifier is not None:
            results.update(sample_accuracy(SampleClassifier.from_pretrained(classifier), samples, np.asarray(labels)))
        return results

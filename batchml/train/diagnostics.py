"""Reading learning curves: is the model over-fitting, under-fitting, or about right?"""

from __future__ import annotations

OVERFIT_GAP = 0.10  # train accuracy above validation accuracy by this much
OVERFIT_LOSS_RISE = 0.10  # validation loss up this share from its minimum
STILL_LEARNING = 0.01  # validation accuracy still rising this much per epoch at the end
UNDERFIT_GAP = 0.03  # train accuracy hardly above validation: capacity to spare


def fit_verdict(curves: dict[str, list[float]]) -> dict:
    """A verdict from per-epoch ``accuracy``, ``val_accuracy``, ``loss`` and ``val_loss``.

    - over-fitting: validation loss rose well past its minimum, or training accuracy runs
      far ahead of validation accuracy;
    - under-fitting: validation accuracy was still rising at the end while training
      accuracy is barely above it (train longer, or give the net more capacity);
    - otherwise a good fit.
    (Augmented training batches make training accuracy read low: the gap is conservative.)
    """
    acc, val_acc, val_loss = curves["accuracy"], curves["val_accuracy"], curves["val_loss"]
    gap = acc[-1] - val_acc[-1]
    best = min(range(len(val_loss)), key=val_loss.__getitem__)
    rise = (val_loss[-1] - val_loss[best]) / max(val_loss[best], 0.01)  # a loss near 0 is a perfect fit
    slope = val_acc[-1] - val_acc[-2] if len(val_acc) > 1 else val_acc[-1]
    figures = {"train_validation_gap": round(gap, 4), "best_validation_loss_epoch": best + 1,
               "validation_loss_rise": round(rise, 4), "last_epoch_validation_gain": round(slope, 4)}
    if rise > OVERFIT_LOSS_RISE or gap > OVERFIT_GAP:
        why = (f"validation loss is {rise:.0%} above its minimum at epoch {best + 1}" if rise > OVERFIT_LOSS_RISE
               else f"training accuracy is {gap:.1%} above validation accuracy")
        return {"verdict": "over-fitting", "reason": f"{why}: stop earlier, regularise or augment more", **figures}
    if slope > STILL_LEARNING and gap < UNDERFIT_GAP:
        return {"verdict": "under-fitting", "reason": f"validation accuracy still rose {slope:.1%} in the last "
                f"epoch with training accuracy only {gap:.1%} above it: train longer or widen the net", **figures}
    return {"verdict": "good fit", "reason": "validation loss at or near its minimum, training and validation "
            "accuracy close", **figures}

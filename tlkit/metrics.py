"""Evaluation metrics, computed the same way for every head and baseline.

Two classes: the positive class is index 1, predictions use threshold 0.5
on its probability. More classes: argmax predictions, one-vs-rest macro
ROC AUC and average precision.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, confusion_matrix, roc_auc_score
from sklearn.preprocessing import label_binarize


def predict_from_proba(proba: np.ndarray) -> np.ndarray:
    proba = np.asarray(proba)
    if proba.shape[1] == 2:
        return (proba[:, 1] >= 0.5).astype(np.int64)
    return proba.argmax(axis=1).astype(np.int64)


def classification_metrics(y_true, proba) -> dict:
    """accuracy, roc_auc, average_precision (None where undefined) and the confusion matrix."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = proba.shape[1]
    pred = predict_from_proba(proba)
    present = np.unique(y_true)
    roc_auc = average_precision = None
    if len(present) >= 2:
        if n_classes == 2:
            roc_auc = float(roc_auc_score(y_true, proba[:, 1]))
            average_precision = float(average_precision_score(y_true, proba[:, 1]))
        else:
            onehot = label_binarize(y_true, classes=np.arange(n_classes))
            cols = [c for c in range(n_classes) if onehot[:, c].any()]  # classes absent from y_true have no curve
            roc_auc = float(np.mean([roc_auc_score(onehot[:, c], proba[:, c]) for c in cols]))
            average_precision = float(np.mean([average_precision_score(onehot[:, c], proba[:, c]) for c in cols]))
    return {
        "accuracy": float(accuracy_score(y_true, pred)),
        "roc_auc": roc_auc,
        "average_precision": average_precision,
        "confusion_matrix": confusion_matrix(y_true, pred, labels=np.arange(n_classes)).tolist(),
        "n": int(len(y_true)),
    }

#!/usr/bin/env python3
"""Writes the tiny ONNX models under tests/fixtures/eval-dnn/ that the `ace eval` face and OCR
tests run through OpenCV DNN. Each is a fixed, hand-computable function so the tests can assert
exact numbers. Needs `pip install onnx numpy`; the project itself never runs this script.

face_detector.onnx  input 1x3x300x300 -> output 1x1x2x7 (the SSD DetectionOutput layout of
                    OpenCV's res10 face detector: image id, label, confidence, x1, y1, x2, y2
                    normalised), independent of the input: one face at (0.25, 0.2)-(0.75, 0.8)
                    with confidence 0.9, and one at confidence 0.2 (below the threshold).
face_embedder.onnx  input 1x3x112x112 -> output 1x4 (ArcFace's layout): the channel means of
                    the input through a fixed 1x1 convolution, e = W m + b with
                    W = [[1,0,0],[0,1,0],[0,0,1],[1,1,1]], b = [0, 0, 0, 0.5].
recognizer.onnx     input 1x1x32x100 -> output 5x1x3 (CRNN's T x batch x classes, class 0 the
                    CTC blank, then the charset a, b): the mean v of each 32x20 column block
                    gives logits (0, 4v - 2, -4v - 2), so white blocks read "a", black blocks
                    "b", grey blocks blank.
charset.txt         the recogniser's symbols, one a line.
"""
import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

OPSET = 12
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "eval-dnn")


def save(graph, name):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="ace make_eval_dnn_fixtures")
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(OUT, name))


def io(name, shape):
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def detector():
    rows = np.array([[0, 1, 0.9, 0.25, 0.2, 0.75, 0.8],
                     [0, 1, 0.2, 0.0, 0.0, 0.5, 0.5]], np.float32)
    w = numpy_helper.from_array(np.zeros((14, 3, 1, 1), np.float32), "w")
    b = numpy_helper.from_array(rows.reshape(14), "b")
    shape = numpy_helper.from_array(np.array([1, 1, 2, 7], np.int64), "shape")
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["m"]),
        helper.make_node("Conv", ["m", "w", "b"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["detections"]),
    ]
    save(helper.make_graph(nodes, "face_detector", [io("image", [1, 3, 300, 300])],
                           [io("detections", [1, 1, 2, 7])], [w, b, shape]),
         "face_detector.onnx")


def embedder():
    wm = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.float32).reshape(4, 3, 1, 1)
    w = numpy_helper.from_array(wm, "w")
    b = numpy_helper.from_array(np.array([0, 0, 0, 0.5], np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["face", "w", "b"], ["c"], kernel_shape=[1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["embedding"], axis=1),
    ]
    save(helper.make_graph(nodes, "face_embedder", [io("face", [1, 3, 112, 112])],
                           [io("embedding", [1, 4])], [w, b]),
         "face_embedder.onnx")


def recognizer():
    area = 32 * 20
    wm = np.zeros((3, 1, 32, 20), np.float32)
    wm[1] = 4.0 / area
    wm[2] = -4.0 / area
    w = numpy_helper.from_array(wm, "w")
    b = numpy_helper.from_array(np.array([0, -2, -2], np.float32), "b")
    shape = numpy_helper.from_array(np.array([3, 5], np.int64), "shape")
    shape2 = numpy_helper.from_array(np.array([5, 1, 3], np.int64), "shape2")
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["c"], kernel_shape=[32, 20],
                         strides=[32, 20]),
        helper.make_node("Reshape", ["c", "shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0]),
        helper.make_node("Reshape", ["t", "shape2"], ["logits"]),
    ]
    save(helper.make_graph(nodes, "recognizer", [io("image", [1, 1, 32, 100])],
                           [io("logits", [5, 1, 3])], [w, b, shape, shape2]),
         "recognizer.onnx")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    detector()
    embedder()
    recognizer()
    with open(os.path.join(OUT, "charset.txt"), "w") as f:
        f.write("a\nb\n")

#!/usr/bin/env python3
"""Writes the tiny ONNX models under tests/fixtures/dnn/ that the depth and pose tests load
through OpenCV DNN. Each is a fixed, hand-computable function so the tests can assert exact
numbers. Needs `pip install onnx numpy`; the project itself never runs this script.

depth.onnx  input "image" 1x3x8x8 -> output 1x4x4:
            d = 0.5 R + 0.25 G + 0.25 B + 0.1 (a 1x1 conv), then a 2x2 average pool (a
            half-size "depth map", so the op must resize it back to the input size).
pose.onnx   input "image" 1x3x48x48 -> output 1x57x6x6 (19 heatmaps + 38 PAFs, stride 8),
            independent of the input: one person with nose, neck, both shoulders and both
            elbows (cells below), PAFs set along the five limbs joining them.
pose_expected.png
            what the ControlNet/scepter skeleton drawing makes of that person on a 48x48
            canvas, drawn here with OpenCV's Python bindings (this part also needs
            `pip install opencv-python-headless==4.6.0.66`, the OpenCV the project links).
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 12
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "dnn")


def save(graph, name):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="ace make_dnn_fixtures")
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(OUT, name))


def depth():
    w = numpy_helper.from_array(np.array([0.5, 0.25, 0.25], np.float32).reshape(1, 3, 1, 1), "w")
    b = numpy_helper.from_array(np.array([0.1], np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["d"], kernel_shape=[1, 1]),
        helper.make_node("AveragePool", ["d"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Squeeze", ["p"], ["depth"], axes=[1]),
    ]
    g = helper.make_graph(
        nodes, "depth",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1, 4, 4])],
        [w, b])
    save(g, "depth.onnx")


# Cells (x, y) of the parts present, in the 6x6 output grid (COCO-18 part numbers).
PARTS = {0: (2, 1), 1: (2, 2), 2: (1, 2), 3: (1, 3), 5: (3, 2), 6: (3, 3)}
# Limbs present: (part a, part b, PAF x channel, PAF y channel) in the 57-channel output.
LIMBS = [(1, 2, 31, 32), (1, 5, 39, 40), (2, 3, 33, 34), (5, 6, 41, 42), (1, 0, 47, 48)]


def pose_output():
    out = np.zeros((1, 57, 6, 6), np.float32)
    for part, (x, y) in PARTS.items():
        out[0, part, y, x] = 1.0
        out[0, part, y - 1, x] = out[0, part, y + 1, x] = 0.5
        out[0, part, y, x - 1] = out[0, part, y, x + 1] = 0.5
    # The nose leans left: neighbours 0.5 (left) and 0.25 (right) put the parabola's vertex
    # at -0.1 cells.
    nx, ny = PARTS[0]
    out[0, 0, ny, nx + 1] = 0.25
    for a, b, cx, cy in LIMBS:
        (xa, ya), (xb, yb) = PARTS[a], PARTS[b]
        ux, uy = np.sign(xb - xa), np.sign(yb - ya)
        for x in range(min(xa, xb), max(xa, xb) + 1):
            for y in range(min(ya, yb), max(ya, yb) + 1):
                out[0, cx, y, x] = ux
                out[0, cy, y, x] = uy
    return out


# ControlNet's 18 colours and 17 drawn limbs (0-based keypoint pairs).
COLORS = [[255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0],
          [0, 255, 0], [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255],
          [0, 0, 255], [85, 0, 255], [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]]
DRAWN = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
         (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]


def pose_expected():
    import cv2

    # Keypoints in pixels: cell centres 8 c + 3.5; the nose sits 0.1 cells left of its cell.
    points = {p: (8 * x + 3.5, 8 * y + 3.5) for p, (x, y) in PARTS.items()}
    points[0] = (points[0][0] - 0.8, points[0][1])
    canvas = np.zeros((48, 48, 3), np.uint8)
    for p, (x, y) in sorted(points.items()):
        cv2.circle(canvas, (int(x), int(y)), 4, COLORS[p], thickness=-1)
    for i, (a, b) in enumerate(DRAWN):
        if a not in points or b not in points:
            continue
        (xa, ya), (xb, yb) = points[a], points[b]
        layer = canvas.copy()
        length = ((xa - xb) ** 2 + (ya - yb) ** 2) ** 0.5
        angle = np.degrees(np.arctan2(ya - yb, xa - xb))
        poly = cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), 4),
                                int(angle), 0, 360, 1)
        cv2.fillConvexPoly(layer, poly, COLORS[i])
        canvas = cv2.addWeighted(canvas, 0.4, layer, 0.6, 0)
    # The canvas holds RGB; imwrite takes BGR.
    cv2.imwrite(os.path.join(OUT, "pose_expected.png"), canvas[:, :, ::-1])


def pose():
    # Zero times the pooled input plus a constant: the output does not depend on the image.
    zero = numpy_helper.from_array(np.zeros((57, 3, 1, 1), np.float32), "zero")
    const = numpy_helper.from_array(pose_output(), "const")
    nodes = [
        helper.make_node("AveragePool", ["image"], ["p"], kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Conv", ["p", "zero"], ["z"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["z", "const"], ["net_output"]),
    ]
    g = helper.make_graph(
        nodes, "pose",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 48, 48])],
        [helper.make_tensor_value_info("net_output", TensorProto.FLOAT, [1, 57, 6, 6])],
        [zero, const])
    save(g, "pose.onnx")


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    depth()
    pose()
    pose_expected()

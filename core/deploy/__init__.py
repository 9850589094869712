"""Deployment: ONNX export with parity checks, int8 quantisation and ONNX Runtime inference.
Imports everything below it, never the studies or the api facade.
"""

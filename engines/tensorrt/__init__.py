"""TensorRT on Jetson: engine build, cache and runner.

Only ``seam.py`` imports ``tensorrt`` and ``pycuda``, and only when called; importing this
package (or any module in it) works on a machine without either.
"""

"""Triton loads this file; the model lives in the tierplace package (see its docstring)."""

from tierplace.model.triton_model import TritonPythonModel

__all__ = ["TritonPythonModel"]

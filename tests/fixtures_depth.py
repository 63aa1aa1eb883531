"""Depth data fixtures in the real on-disk formats: the package's generators (onelora.data.synthetic)."""

from onelora.data.synthetic import RGB, write_diode, write_kitti, write_nyu, write_png16, write_rgb

__all__ = ["RGB", "write_diode", "write_kitti", "write_nyu", "write_png16", "write_rgb"]

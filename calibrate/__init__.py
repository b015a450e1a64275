"""Measure a real GPU (torch + pynvml) and write a hardware profile the emulator loads as is.

torch and pynvml are imported lazily inside the measuring functions, so `import calibrate` (and the
pure parts: fit, profile_writer, compare) work on a machine without them.
"""

#: Bumped whenever what a figure means or how it is measured changes; recorded in every profile.
METHOD_VERSION = "calibrate/1"

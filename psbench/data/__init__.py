"""Annotation parsers, video decoding, frame samplers, transforms, loaders and the synthetic set."""

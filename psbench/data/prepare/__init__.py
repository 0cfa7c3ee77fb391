"""data/prepare"""

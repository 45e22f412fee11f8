"""entitwist.ops"""

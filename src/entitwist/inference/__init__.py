"""entitwist.inference"""

"""entitwist.models"""

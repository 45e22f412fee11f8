"""entitwist.engine"""

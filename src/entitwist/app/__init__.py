"""entitwist.app"""

"""entitwist.data"""

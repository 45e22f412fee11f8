"""entitwist.entities"""

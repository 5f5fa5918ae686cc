"""toymodels"""

"""What bgsyncd keeps: the contract every engine keeps, the local result cache, one folder per
engine.
"""

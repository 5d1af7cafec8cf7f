"""What bgsyncd keeps: the contract every engine keeps, the local result cache, the engines."""

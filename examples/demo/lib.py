def common_prefix(a: str, b: str) -> str:
    """Return the longest common prefix of a and b."""
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return a[:i]

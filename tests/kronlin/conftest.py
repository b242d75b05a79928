

def pytest_terminal_summary(terminalreporter):
    """Print the largest relative error seen per operator and dtype (for the issue notes)."""
    from .helpers import MAX_ERRORS

    if not MAX_ERRORS:
        return
    terminalreporter.section("kronlin: largest relative error vs dense reference")
    for (label, dtype), err in sorted(MAX_ERRORS.items()):
        terminalreporter.write_line(f"{label:32s} {dtype:8s} {err:.2e}")

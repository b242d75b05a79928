

def pytest_terminal_summary(terminalreporter):
    """Print the largest relative error and the largest slack (bound / error) per operator and dtype."""
    from .helpers import MAX_ERRORS, MAX_SLACK

    if not MAX_ERRORS:
        return
    terminalreporter.section("kronlin: largest relative error vs dense reference, largest slack")
    for (label, dtype), err in sorted(MAX_ERRORS.items()):
        slack = MAX_SLACK.get((label, dtype))
        shown = "exact" if slack is None else f"{slack:8.3g}"
        terminalreporter.write_line(f"{label:32s} {dtype:8s} {err:.2e}  slack {shown}")

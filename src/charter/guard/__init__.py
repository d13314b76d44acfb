from charter.guard.guard import Guard, OutputMonitor, Verdict

__all__ = ["Guard", "OutputMonitor", "Verdict"]

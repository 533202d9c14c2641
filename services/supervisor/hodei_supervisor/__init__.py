"""The supervisor: watches workers' heartbeats (recovery comes with the failure-recovery work)."""

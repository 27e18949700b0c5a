"""Simulated instruments: real Modbus servers (TCP, RTU on a pty) driven by scenarios."""

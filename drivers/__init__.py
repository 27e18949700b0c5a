"""Instrument drivers: the transport contract, Modbus transports, register codec and maps."""

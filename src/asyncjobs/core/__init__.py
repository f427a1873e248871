"""Pure scheduling: events in, commands out. No IO, no clock, no event loop."""

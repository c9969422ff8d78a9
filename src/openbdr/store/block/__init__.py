"""Block mode: volume backends, the gateway wire format and the gateway client target."""

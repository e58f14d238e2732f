"""The patch panel: endpoints, conditions, policy and routing decisions. Pure: no I/O."""

"""The compute domain; its services arrive with their issues."""

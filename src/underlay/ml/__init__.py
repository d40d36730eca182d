"""The ml domain; its services arrive with their issues."""

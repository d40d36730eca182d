"""The data domain; its services arrive with their issues."""

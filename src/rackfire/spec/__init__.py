"""Stack files: load, validate and convert them to rackfire.model.stack.StackSpec.

Every problem in a file is raised together as one SpecError, each with the file, 1-based line
and column, and the dotted field path (`roles.web.ports[0]`); nothing else escapes.
"""

from rackfire.spec.loader import load_stack_file, load_stack_text, stack_json_schema

__all__ = ["load_stack_file", "load_stack_text", "stack_json_schema"]

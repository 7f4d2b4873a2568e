"""Named things of one kind (models, tasks, backends), in the order they were added."""


class Registry(dict):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def add(self, item):
        """Adds `item` under its `name`; returns it."""
        self[item.name] = item
        return item

    def named(self, name):
        try:
            return self[name]
        except KeyError:
            raise ValueError(f"unknown {self.kind} {name!r} (known: {', '.join(self)})") from None

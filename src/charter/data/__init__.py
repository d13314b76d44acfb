from charter.data.records import Label, Message, Record, RecordKind, Split

__all__ = ["Label", "Message", "Record", "RecordKind", "Split"]

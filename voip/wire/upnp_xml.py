"""XML from the LAN, parsed safely for UPnP (UDA 1.1 §2.3, §3.2): no DTD, no entities, capped.

The standard library's expat feeds an ElementTree TreeBuilder, with any document type
declaration refused: without a DTD no entity can be declared, so none is ever expanded (no
billion laughs, no external entity fetched). That is what defusedxml's forbid_dtd does, in a few
lines and without a dependency. Names are kept without their namespace prefix, which is all the
lookups in a description or a SOAP answer need.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from xml.parsers import expat

from voip.wire.upnp import UpnpParseError
from voip.wire.upnp_http import MAX_BODY

MAX_XML = MAX_BODY
MAX_DEPTH = 24  # nested XML elements (a description nests about ten)
MAX_ELEMENTS = 4096  # XML elements in one document


def xml_untrusted(data: bytes, what: str) -> ET.Element:
    """`data` as an element tree, tags without their namespace prefixes. A DTD is refused
    (so no entity is ever declared or expanded), and so are documents past the caps."""
    if len(data) > MAX_XML:
        raise UpnpParseError(f"{what}: over {MAX_XML} bytes")
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    depth = elements = 0

    def start(name: str, _attributes: dict[str, str]) -> None:
        nonlocal depth, elements
        depth += 1
        elements += 1
        if depth > MAX_DEPTH or elements > MAX_ELEMENTS:
            raise UpnpParseError(f"{what}: nested too deep or too many elements")
        builder.start(_local(name), {})

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(_local(name))

    def refuse_dtd(*_: object) -> None:
        raise UpnpParseError(f"{what}: a document type declaration (refused, and its entities)")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except expat.ExpatError as error:
        raise UpnpParseError(f"{what}: not well-formed XML ({error})") from None
    return builder.close()  # expat saw every element closed


def _local(name: str) -> str:
    return name.rpartition(":")[2]


def child_text(element: ET.Element, tag: str) -> str:
    """The text of `element`'s first <`tag`> child, stripped; "" when it has none."""
    child = element.find(tag)
    return (child.text or "").strip() if child is not None else ""

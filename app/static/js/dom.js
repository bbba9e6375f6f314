// Element lookup, the one element builder, and how times read.
// Text reaches the DOM only as text: el() sets textContent, never HTML.

export const $ = (id) => document.getElementById(id);

const PROPERTIES = new Set(["className", "title", "type", "tabIndex", "value", "maxLength", "dateTime"]);

// el("li", {className: "x", text: "words", data: {id: 1}, attrs: {"aria-label": "…"}}, child, …)
// Options left undefined are not set; children (nodes; false/null skipped) follow the text.
export function el(tag, options = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(options)) {
    if (value === undefined) continue;
    if (name === "text") node.textContent = value;
    else if (name === "data") Object.assign(node.dataset, value);
    else if (name === "attrs") for (const [attr, v] of Object.entries(value)) node.setAttribute(attr, v);
    else if (PROPERTIES.has(name)) node[name] = value;
    else throw new Error(`el(): unknown option ${name}`);
  }
  node.append(...children.filter((child) => child instanceof Node));
  return node;
}

export function shortTime(iso) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return "";
  const seconds = (Date.now() - when.getTime()) / 1000;
  if (seconds < 60) return "now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  const now = new Date();
  if (now.toDateString() === when.toDateString()) {
    return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  if (now.getFullYear() === when.getFullYear()) {
    return when.toLocaleDateString([], { month: "short", day: "numeric" });
  }
  return when.toLocaleDateString();
}

export function fullTime(iso) {
  const when = new Date(iso);
  return Number.isNaN(when.getTime()) ? "" : when.toLocaleString();
}

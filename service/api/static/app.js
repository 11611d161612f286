// The facebank page: plain JavaScript over the v1 REST API, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const PEOPLE_PAGE = 20;

// The API's error codes, in words a person can act on; the server's own message follows in brackets.
const ERROR_TEXT = {
  missing_api_key: "This server needs an API key: enter it at the top of the page.",
  invalid_api_key: "The API key was refused (unknown, mistyped or revoked).",
  insufficient_scope: "Your API key is not allowed to do this.",
  no_face: "No face was found in the photo.",
  multiple_faces: "The photo shows more than one face.",
  too_many_faces: "The photo has too many faces.",
  invalid_image: "The file is not an image the server can read.",
  image_too_large: "The image has too many pixels.",
  payload_too_large: "The file is too large.",
  no_face_in_box: "No face is where the box is.",
  ambiguous_box: "The box covers two faces about equally.",
  not_found: "It no longer exists (deleted meanwhile?).",
  conflict: "That is already taken by another person.",
  busy: "The server is busy; try again in a moment.",
  embedder_switched: "The server must be restarted after a model change before it can enrol.",
  validation_error: "The request was not valid.",
  unreachable: "The server did not answer.",
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${ERROR_TEXT[code] || "The server refused the request."} (${code}: ${message})`);
    this.status = status;
    this.code = code;
  }
}

// --- the API key: kept for this tab only (sessionStorage), never in the page's address
const apiKey = () => sessionStorage.getItem("facebank-key") || "";

async function call(path, options = {}, attempt = 0) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey()) headers["X-API-Key"] = apiKey();
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (error) {
    throw new ApiError(0, "unreachable", "the server did not answer");
  }
  if (response.status === 204) return null;
  let body = null;
  try { body = await response.json(); } catch (error) { body = null; }
  if (response.ok) return body;
  const code = body && body.error ? body.error.code : `http_${response.status}`;
  const message = body && body.error ? body.error.message : response.statusText;
  // Turned away before any work: wait as told (or a second) and try again, twice at most.
  if ((response.status === 429 || code === "busy") && attempt < 2) {
    const wait = Math.min(10, Number(response.headers.get("Retry-After")) || 1);
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    return call(path, options, attempt + 1);
  }
  throw new ApiError(response.status, code, message);
}

function showError(error) {
  const banner = $("error");
  if (!error) { banner.hidden = true; banner.textContent = ""; return; }
  banner.textContent = error.message;
  banner.hidden = false;
}

function say(id, text, kind) {
  const line = $(id);
  line.textContent = text;
  line.className = "status" + (kind ? " " + kind : "");
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const when = (iso) => new Date(iso).toLocaleString();
const score = (value) => value.toFixed(3);

// A button that asks again before doing something that cannot be undone (no modal dialog).
function confirmingButton(label, question, action, className = "danger") {
  let armed = null;
  const button = el("button", { type: "button", class: className }, label);
  button.addEventListener("click", async () => {
    if (!armed) {
      button.textContent = question;
      armed = setTimeout(() => { armed = null; button.textContent = label; }, 6000);
      return;
    }
    clearTimeout(armed);
    armed = null;
    button.disabled = true;
    try { await action(); } finally { button.disabled = false; button.textContent = label; }
  });
  return button;
}

// --- drag and drop onto a file field's label; the field itself stays usable by keyboard
function dropZone(zone, input, onFiles) {
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const files = [...event.dataTransfer.files].filter((f) => f.type.startsWith("image/") || !f.type);
    if (files.length) onFiles(input.multiple ? files : files.slice(0, 1));
  });
  input.addEventListener("change", () => { if (input.files.length) onFiles([...input.files]); });
}

// --- identify
let lastPhoto = null;

async function identify(file) {
  lastPhoto = file;
  showError(null);
  const stage = $("stage");
  const list = $("faces");
  stage.replaceChildren();
  list.replaceChildren();
  const img = el("img", { alt: `the photo ${file.name}`, src: URL.createObjectURL(file) });
  stage.append(img);
  say("identify-status", "looking for faces…");
  const k = Math.max(1, Math.min(20, Number($("identify-k").value) || 3));
  try {
    const form = new FormData();
    form.append("image", file);
    const body = await call(`/v1/identify?k=${k}`, { method: "POST", body: form });
    await img.decode();
    // Boxes are in the upright photo's pixels; the browser shows it upright too (EXIF applied).
    const width = img.naturalWidth, height = img.naturalHeight;
    img.classList.toggle("small", width < 768);
    const ordered = body.faces.slice().sort((a, b) => a.bbox[0] - b.bbox[0]);
    ordered.forEach((face, index) => {
      stage.append(faceBox(face, index, width, height));
      list.append(faceCard(face, index, body.threshold));
    });
    const known = ordered.filter((f) => f.identity).length;
    say("identify-status", `${ordered.length} face(s), ${known} recognised; threshold ${score(body.threshold)}, model ${body.model}`, "ok");
  } catch (error) {
    say("identify-status", error.message, "error");
  }
}

function faceLabel(face) {
  return face.identity ? `${face.identity.name} ${score(face.identity.score)}` : "unknown";
}

function faceBox(face, index, width, height) {
  const [x1, y1, x2, y2] = face.bbox;
  const box = el("button", {
    type: "button",
    class: "box" + (face.identity ? "" : " unknown"),
    "data-face": index,
    "aria-label": `face ${index + 1}: ${faceLabel(face)}`,
    onclick: () => selectFace(index),
  }, el("span", { class: "label" }, `${index + 1} ${faceLabel(face)}`));
  Object.assign(box.style, {
    left: `${(100 * x1) / width}%`, top: `${(100 * y1) / height}%`,
    width: `${(100 * (x2 - x1)) / width}%`, height: `${(100 * (y2 - y1)) / height}%`,
  });
  return box;
}

function selectFace(index) {
  document.querySelectorAll(".box, .faces > li").forEach((node) => node.classList.toggle("selected", node.dataset.face === String(index)));
  const card = document.querySelector(`.faces > li[data-face="${index}"]`);
  if (!card) return;
  card.querySelector("details").open = true;
  card.scrollIntoView({ block: "nearest" });
  card.querySelector("input").focus();
}

function faceCard(face, index, threshold) {
  const rows = face.matches.map((match) => el("tr", { class: match.score >= threshold ? "above" : "" },
    el("td", {}, match.name), el("td", { class: "num" }, score(match.score)),
    el("td", {}, match.score >= threshold ? "above the threshold" : "")));
  const matches = face.matches.length
    ? el("table", { class: "matches" },
      el("thead", {}, el("tr", {}, el("th", {}, "closest people"), el("th", { class: "num" }, "score"), el("th", {}, ""))),
      el("tbody", {}, ...rows))
    : el("p", { class: "muted" }, "No one is enrolled yet.");
  const status = el("p", { class: "status", "aria-live": "polite" });
  const card = el("li", { "data-face": index },
    el("h3", {}, `Face ${index + 1}: ${face.identity ? face.identity.name : "unknown"}`),
    el("p", { class: "muted" }, `A name is given when the best score reaches the threshold ${score(threshold)}.`),
    matches,
    el("details", face.identity ? {} : { open: "" },
      el("summary", {}, face.identity ? "Enrol this face anyway" : "Enrol this face"),
      newPersonForm(face, status), existingPersonForm(face, status)),
    status);
  return card;
}

async function enrolBox(identityId, file, bbox) {
  const form = new FormData();
  form.append("image", file);
  const box = bbox.map((v) => v.toFixed(2)).join(",");
  return call(`/v1/identities/${identityId}/faces?face_policy=box&box=${encodeURIComponent(box)}`, { method: "POST", body: form });
}

function newPersonForm(face, status) {
  const name = el("input", { type: "text", placeholder: "new person's name", required: "", maxlength: "256", "aria-label": "new person's name" });
  return el("form", { class: "enrol-new", onsubmit: async (event) => {
    event.preventDefault();
    status.textContent = "enrolling…";
    status.className = "status";
    let created = null;
    try {
      created = await call("/v1/identities", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: name.value.trim() }) });
      await enrolBox(created.id, lastPhoto, face.bbox);
      loadPeople();
      await identify(lastPhoto);  // the labels now show them
      say("identify-status", `Enrolled ${created.name}. ${$("identify-status").textContent}`, "ok");
    } catch (error) {
      if (created) await call(`/v1/identities/${created.id}`, { method: "DELETE" }).catch(() => {});
      status.textContent = error.message;
      status.className = "status error";
    }
  } }, name, el("button", { type: "submit" }, "Enrol as a new person"));
}

function existingPersonForm(face, status) {
  const query = el("input", { type: "search", placeholder: "search people by name", "aria-label": "add to an existing person: search by name" });
  const choices = el("ul", { class: "choices" });
  let timer = null;
  const search = async () => {
    const text = query.value.trim();
    choices.replaceChildren();
    if (!text) return;
    try {
      const page = await call(`/v1/identities?limit=8&name=${encodeURIComponent(text)}`);
      if (!page.items.length) choices.append(el("li", { class: "muted" }, "no one by that name"));
      for (const person of page.items) {
        choices.append(el("li", {}, el("button", { type: "button", class: "choose", onclick: async () => {
          status.textContent = `adding to ${person.name}…`;
          status.className = "status";
          try {
            await enrolBox(person.id, lastPhoto, face.bbox);
            loadPeople();
            await identify(lastPhoto);
            say("identify-status", `Added the face to ${person.name}. ${$("identify-status").textContent}`, "ok");
          } catch (error) {
            status.textContent = error.message;
            status.className = "status error";
          }
        } }, `Add to ${person.name}`), el("span", { class: "muted" }, ` ${person.face_count} face(s)${person.external_id ? ", " + person.external_id : ""}`)));
      }
    } catch (error) {
      choices.append(el("li", { class: "error" }, error.message));
    }
  };
  query.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 250); });
  return el("form", { class: "add-existing", onsubmit: (event) => { event.preventDefault(); clearTimeout(timer); search(); } },
    query, el("button", { type: "submit" }, "Find"), choices);
}

// --- uploading several photos to one person, one at a time, each with its outcome
async function uploadPhotos(identityId, files, policy, target) {
  const bar = el("progress", { max: files.length, value: 0 });
  const counter = el("span", {}, ` 0 of ${files.length}`);
  const outcomes = el("ul", {});
  target.replaceChildren(el("div", {}, bar, counter), outcomes);
  let added = 0;
  for (const [index, file] of files.entries()) {
    const form = new FormData();
    form.append("image", file);
    try {
      const face = await call(`/v1/identities/${identityId}/faces?face_policy=${policy}`, { method: "POST", body: form });
      added += 1;
      outcomes.append(el("li", { class: "ok" }, `${file.name}: added (face ${face.id.slice(0, 8)})`));
    } catch (error) {
      outcomes.append(el("li", { class: "failed" }, `${file.name}: ${error.message}`));
      if (error.code === "missing_api_key" || error.code === "invalid_api_key") break;
    }
    bar.value = index + 1;
    counter.textContent = ` ${index + 1} of ${files.length}, ${added} added`;
  }
  return added;
}

// --- enrol a new person from one or more photos
let enrolFiles = [];
const ENROL_HINT = "Choose photos of them or drop them here";

async function enrol(event) {
  event.preventDefault();
  showError(null);
  const name = $("enrol-name").value.trim();
  const target = $("enrol-progress");
  if (!enrolFiles.length) {
    target.replaceChildren(el("p", { class: "status error" }, "Choose or drop at least one photo of them."));
    return;
  }
  try {
    const person = await call("/v1/identities", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ name }) });
    const added = await uploadPhotos(person.id, enrolFiles, "largest", target);
    if (!added) {
      // A person with no face cannot be recognised: do not leave them behind.
      await call(`/v1/identities/${person.id}`, { method: "DELETE" });
      target.append(el("p", { class: "status error" }, `${name} was not enrolled: no photo could be used.`));
    } else {
      target.append(el("p", { class: "status ok" }, `Enrolled ${name} with ${added} face(s).`));
      $("enrol-form").reset();
      enrolFiles = [];
      $("enrol-drop").querySelector("span").textContent = ENROL_HINT;
    }
    loadPeople();
  } catch (error) {
    target.replaceChildren(el("p", { class: "status error" }, error.message));
  }
}

// --- people: search and cursor paging
const people = { cursors: [null], page: 0, next: null, query: "" };

async function loadPeople() {
  const tbody = document.querySelector("#people tbody");
  const cursor = people.cursors[people.page];
  const params = new URLSearchParams({ limit: PEOPLE_PAGE });
  if (cursor) params.set("cursor", cursor);
  if (people.query) params.set("name", people.query);
  try {
    const page = await call(`/v1/identities?${params}`);
    tbody.replaceChildren(...page.items.map((person) => el("tr", { "data-id": person.id },
      el("td", {}, el("a", { href: `#/person/${person.id}` }, person.name)),
      el("td", {}, person.external_id || ""),
      el("td", { class: "num" }, String(person.face_count)),
      el("td", {}, when(person.created_at)))));
    if (!page.items.length) {
      tbody.append(el("tr", {}, el("td", { colspan: 4, class: "muted" }, people.query ? "No one matches." : "No one is enrolled yet.")));
    }
    people.next = page.next_cursor;
    $("people-prev").disabled = people.page === 0;
    $("people-next").disabled = !people.next;
    $("people-page").textContent = `page ${people.page + 1}`;
    $("key-state").textContent = "";
  } catch (error) {
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: 4, class: "error" }, error.message)));
    if (error.status === 401 || error.status === 403) $("key-state").textContent = "key needed";
  }
}

// --- one person's page
let currentPerson = null;
let addFilesWired = false;

async function showPerson(id) {
  currentPerson = id;
  try {
    const person = await call(`/v1/identities/${id}`);
    $("person-name").textContent = person.name;
    $("rename-name").value = person.name;
    $("person-meta").textContent = [
      person.external_id ? `external id ${person.external_id}` : null,
      `${person.face_count} face(s)`,
      `created ${when(person.created_at)}`,
      `id ${person.id}`,
    ].filter(Boolean).join(" · ");
    const tbody = document.querySelector("#person-faces tbody");
    tbody.replaceChildren(...person.faces.map((face) => el("tr", { "data-face-id": face.id },
      el("td", {}, el("code", { title: face.id }, face.id)),
      el("td", {}, when(face.created_at)),
      el("td", {}, face.model),
      el("td", { class: "num" }, score(face.det_score)),
      el("td", {}, face.bbox.map((v) => v.toFixed(0)).join(",")),
      el("td", {}, confirmingButton("Delete face", "Really delete?", async () => {
        try {
          await call(`/v1/identities/${id}/faces/${face.id}`, { method: "DELETE" });
          await showPerson(id);
          say("person-status", `Deleted face ${face.id.slice(0, 8)}.`, "ok");
        } catch (error) { say("person-status", error.message, "error"); }
      })))));
    if (!person.faces.length) tbody.append(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No faces: add photos below.")));
  } catch (error) {
    $("person-name").textContent = "";
    say("person-status", error.message, "error");
  }
}

function route() {
  const match = location.hash.match(/^#\/person\/([0-9a-f-]{36})$/);
  $("home-view").hidden = Boolean(match);
  $("person-view").hidden = !match;
  showError(null);
  if (match) {
    say("person-status", "");
    $("add-progress").replaceChildren();
    showPerson(match[1]);
  }
  else loadPeople();
}

function start() {
  const keyInput = $("api-key");
  keyInput.value = apiKey();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("facebank-key", keyInput.value.trim());
    $("key-state").textContent = keyInput.value.trim() ? "key in use" : "no key";
    showError(null);
    route();
  });
  $("identify-form").addEventListener("submit", (event) => event.preventDefault());
  dropZone($("identify-drop"), $("identify-file"), (files) => identify(files[0]));
  $("identify-k").addEventListener("change", () => { if (lastPhoto) identify(lastPhoto); });
  dropZone($("enrol-drop"), $("enrol-files"), (files) => {
    enrolFiles = files;
    $("enrol-drop").querySelector("span").textContent = `${files.length} photo(s): ${files.map((f) => f.name).join(", ")}`;
  });
  $("enrol-form").addEventListener("submit", enrol);
  // Search as the name is typed (after a pause) or at once on Enter; a new search starts at page 1.
  let searchTimer = null;
  const searchPeople = (again) => {
    clearTimeout(searchTimer);
    const query = $("people-query").value.trim();
    if (query === people.query && !again) return;
    people.query = query;
    people.cursors = [null];
    people.page = 0;
    loadPeople();
  };
  $("people-search").addEventListener("submit", (event) => { event.preventDefault(); searchPeople(true); });
  $("people-query").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => searchPeople(false), 300);
  });
  $("people-next").addEventListener("click", () => {
    if (!people.next) return;
    people.cursors[people.page + 1] = people.next;
    people.page += 1;
    loadPeople();
  });
  $("people-prev").addEventListener("click", () => { if (people.page > 0) { people.page -= 1; loadPeople(); } });
  $("rename-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const person = await call(`/v1/identities/${currentPerson}`, { method: "PATCH", headers: { "content-type": "application/json" }, body: JSON.stringify({ name: $("rename-name").value.trim() }) });
      await showPerson(currentPerson);
      say("person-status", `Renamed to ${person.name}.`, "ok");
    } catch (error) { say("person-status", error.message, "error"); }
  });
  if (!addFilesWired) {
    dropZone($("add-drop"), $("add-files"), async (files) => {
      const id = currentPerson;
      await uploadPhotos(id, files, $("add-policy").value, $("add-progress"));
      $("add-files").value = "";
      await showPerson(id);
    });
    addFilesWired = true;
  }
  const deletePerson = confirmingButton("Delete this person and all their faces", "Really delete them? This cannot be undone.", async () => {
    try {
      await call(`/v1/identities/${currentPerson}`, { method: "DELETE" });
      location.hash = "#/";
    } catch (error) { say("person-status", error.message, "error"); }
  });
  deletePerson.id = "delete-person";
  $("delete-person").replaceWith(deletePerson);
  window.addEventListener("hashchange", route);
  route();
}

document.addEventListener("DOMContentLoaded", start);

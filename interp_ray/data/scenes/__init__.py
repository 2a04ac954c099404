"""Scenes: seeded synthetic RGB images whose class is defined by visual attributes, with full ground truth.

Why it exists: no download works here, yet the explainers need what CUB gives (classes that share attributes,
reference sentences that name the discriminative ones — InterpNET, Dong) and what VOC gives (object boxes for the
pointing game, two-object images for class discrimination — guided feature inversion). A generator gives all of it
exactly, at any size, straight into Ray Data.

The data
--------
* 12 classes (``CLASSES``), each a value for each of four attribute kinds: shape, colour, pattern, size
  (``ATTRIBUTE_VALUES``). Several classes share attributes and some pairs differ in one attribute only, so a model
  (and an explanation) has to use the right attribute — like bird species. Class names are invented species names
  that contain no attribute word, so naming the class never counts as naming an attribute.
* An image shows one object (or two of different classes, ``two_objects=True``) on a textured, noisy background.
  Nuisances a CNN must see through: position, rotation, size jitter inside the size category, colour and brightness
  jitter, shading, stripe/dot orientation, phase and spacing, background tint, gratings and pixel noise.
* Each row carries ``boxes``, ``box_labels``, ``masks`` (per object), ``attributes`` (of the first object),
  ``discriminative`` (which attribute kinds are discriminative for the label) and ``sentences`` (K reference
  sentences from varied templates, all naming every discriminative attribute with its canonical word).

Discriminative attributes (``discriminative_attributes``)
---------------------------------------------------------
For class c, the discriminative attribute values are its shape, plus the value of every other kind k for which some
other class differs from c in kind k only. Each such value is *necessary*: the neighbouring class agrees with c on
everything else, so an explanation that does not name it cannot tell the two apart. Shape is always included because
it is the object's noun (every sentence needs one). The class table is designed so that this set is also
*sufficient*: no other class has all of these values (the tests check both properties).

Determinism
-----------
Row ``index`` of split ``split`` is drawn from its own ``np.random.Generator`` seeded by
``SeedSequence([salt, seed, split, mode, 0, index])``, so any row can be made alone, in any order, in any process,
and millions can be streamed without memory; the splits (and one- vs two-object mode) use disjoint streams. Labels
are balanced: each block of 12 consecutive indices holds every class once, in an order drawn from a second stream
``SeedSequence([salt, seed, split, mode, 1, block])``.

Conventions: boxes are ``x0, y0, x1, y1`` in pixels with x1, y1 *exclusive*, so ``mask[y0:y1, x0:x1]`` holds every
pixel of the object and the box is tight; absent objects have box ``-1`` and label ``-1``.
"""

from __future__ import annotations

from interp_ray.data.scenes.tables import (ATTRIBUTE_KINDS, ATTRIBUTE_VALUES, ATTRIBUTE_VOCAB, CLASS_NAMES, CLASSES,
                                           attribute_indices, attribute_mentions, class_attributes, DEFAULT_ROWS,
                                           discriminative_attributes, discriminative_kinds, GENERATOR_VERSION,
                                           make_sentences, MAX_SENTENCES, MIN_SIZE, NUM_CLASSES, SPLITS)
from interp_ray.data.scenes.drawing import (add_noise, draw_object, ObjectStyle, place_objects, sample_background,
                                            sample_style, tight_box)
from interp_ray.data.scenes.rows import load_scenes, row_labels, ScenesDataset
from interp_ray.data.scenes.clips import (bounce, DEFAULT_CLIP_ROWS, load_scene_clips, load_scene_videos, MAX_FRAMES,
                                          sample_motion, ScenesClipDataset)

__all__ = ['ATTRIBUTE_KINDS', 'ATTRIBUTE_VALUES', 'ATTRIBUTE_VOCAB', 'CLASS_NAMES', 'CLASSES', 'DEFAULT_CLIP_ROWS',
           'DEFAULT_ROWS', 'GENERATOR_VERSION', 'MAX_FRAMES', 'MAX_SENTENCES', 'MIN_SIZE', 'NUM_CLASSES',
           'ObjectStyle', 'SPLITS', 'ScenesClipDataset', 'ScenesDataset', 'add_noise', 'attribute_indices',
           'attribute_mentions', 'bounce', 'class_attributes', 'discriminative_attributes', 'discriminative_kinds',
           'draw_object', 'load_scene_clips', 'load_scene_videos', 'load_scenes', 'make_sentences', 'place_objects',
           'row_labels', 'sample_background', 'sample_motion', 'sample_style', 'tight_box']
